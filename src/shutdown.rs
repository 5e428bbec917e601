//! The shutdown signal, handed to the runs that must clean up before they exit.
//!
//! `main` listens for SIGTERM (what Kubernetes sends at the end of a Job's deadline or on eviction)
//! and SIGINT (Ctrl-C) and publishes the first one on a `tokio::sync::watch` channel. A run that has
//! something to put back (purge with quiesce: stopped workloads, an unwritten marker) takes a
//! [`Shutdown`] and races its work against [`Shutdown::recv`], as mini-redis passes its shutdown
//! into each connection. Runs with nothing to undo (`gate`, `plan`) are simply dropped by `main`.

use tokio::sync::watch;

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
}

impl Signal {
    /// The signal's name, for logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
        }
    }
}

/// The receiving side: resolves once a signal arrived (at once if one already did).
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<Option<Signal>>);

impl Shutdown {
    /// Installs the SIGTERM and SIGINT handlers and returns the receiver. Must run inside the runtime.
    pub fn listen() -> Shutdown {
        use tokio::signal::unix::{SignalKind, signal};
        let (sender, receiver) = watch::channel(None);
        if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            tokio::spawn(async move {
                let signal = tokio::select! {
                    _ = term.recv() => Signal::Term,
                    _ = int.recv() => Signal::Int,
                };
                let _ = sender.send(Some(signal));
                // Keep the sender (and the handlers) alive, so a receiver never sees a closed channel.
                std::future::pending::<()>().await;
            });
        }
        Shutdown(receiver)
    }

    /// A shutdown that never comes, for runs and tests without signals.
    pub fn never() -> Shutdown {
        let (sender, receiver) = watch::channel(None);
        std::mem::forget(sender);
        Shutdown(receiver)
    }

    /// Waits for the signal.
    pub async fn recv(&mut self) -> Signal {
        match self.0.wait_for(Option::is_some).await {
            Ok(signal) => signal.expect("waited for Some"),
            // The sender is gone only if the handlers could not be installed: no signal will come.
            Err(_) => std::future::pending().await,
        }
    }

    /// The signal, if one already arrived.
    pub fn received(&self) -> Option<Signal> {
        *self.0.borrow()
    }
}
