"""Model operations: the whole life of a model beyond add/list (pull, quantize, prune,
evaluate). A layer above the kernel: it uses the model library and the llama backend, and
the CLI, server and shell use it."""
