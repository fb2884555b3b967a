//! Kickstand's messenger (issue 7; being built).
