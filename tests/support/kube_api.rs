//! The Kubernetes API stand-in (filled in with the marker and gate work).
