//! Kickstand's scheduler (issue 7; being built).
