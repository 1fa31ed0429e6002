//! int8 baseline (bench).
