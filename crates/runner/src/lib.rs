//! Kickstand's runner (issue 7; being built).
