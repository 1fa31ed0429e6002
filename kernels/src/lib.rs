//! Shift-add kernels for power-of-two weight networks. See docs/kernels.md.
