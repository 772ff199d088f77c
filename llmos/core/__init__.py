"""The floor: value types and the kernel handle that every layer above may use."""
