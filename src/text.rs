//! Cutting text to a byte limit the API server or the kubelet sets.

/// `text` as is when it fits in `max` bytes, else cut on a character boundary and ended with `…`,
/// all of it within `max` bytes.
pub fn fit_bytes(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max - "…".len();
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long text is cut within the limit, on a character boundary, and says so; short text is kept.
    #[test]
    fn long_text_is_cut_within_the_limit() {
        let cut = fit_bytes("é".repeat(3000), 4096);
        assert!(cut.len() <= 4096 && cut.ends_with('…'), "{} bytes", cut.len());
        assert_eq!(fit_bytes("short".into(), 4096), "short");
    }
}
