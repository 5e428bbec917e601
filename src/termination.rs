//! Termination messages: the one line `kubectl describe pod`, Argo CD and Helm's hook-failure output
//! show for a container that ended, so the reason is there without digging in logs.
//!
//! The kubelet reads the file at the container's `terminationMessagePath` when it exits (the chart
//! sets it, with `terminationMessagePolicy: FallbackToLogsOnError`, and passes the same path in
//! `CLEANSLATE_TERMINATION_MESSAGE_PATH`); at most 4096 bytes are kept
//! (<https://kubernetes.io/docs/tasks/debug/debug-application/determine-reason-pod-failure/>).
//! Outside a pod the variable is unset and nothing is written. Like every other output, the line
//! never carries a secret: it is built from the same summaries and errors the logs print.

use std::sync::Mutex;

/// The kubelet keeps at most this much of a termination message.
const MAX_BYTES: usize = 4096;

static SUCCESS_LINE: Mutex<Option<String>> = Mutex::new(None);

/// Remembers the one-line summary of a successful run (the last call wins).
pub fn on_success(line: impl Into<String>) {
    *SUCCESS_LINE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(line.into());
}

/// The line for a successful run: the remembered summary, else `done`.
pub fn success_line(command: &str) -> String {
    let remembered = SUCCESS_LINE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    format!("cleanslate {command}: {}", remembered.unwrap_or_else(|| "done".into()))
}

/// Writes `line` to the path in `CLEANSLATE_TERMINATION_MESSAGE_PATH`, if set, cut to what the
/// kubelet keeps. A failure to write is not worth failing the run for.
pub fn write(line: &str) {
    let Some(path) = std::env::var_os("CLEANSLATE_TERMINATION_MESSAGE_PATH").filter(|p| !p.is_empty()) else {
        return;
    };
    let _ = std::fs::write(path, fit(line));
}

/// One line (newlines become spaces), at most [`MAX_BYTES`] bytes.
fn fit(line: &str) -> String {
    crate::text::fit_bytes(line.replace(['\n', '\r'], " "), MAX_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long multi-line message becomes one line the kubelet keeps whole.
    #[test]
    fn messages_fit_on_one_line_within_the_kubelet_limit() {
        assert_eq!(fit("a\nb"), "a b");
        let long = "é".repeat(3000);
        let cut = fit(&long);
        assert!(cut.len() <= MAX_BYTES, "{} bytes", cut.len());
        assert!(cut.ends_with('…'));
    }
}
