//! Kickstand's gateway (issue 7; being built).
