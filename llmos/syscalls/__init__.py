"""Built-in syscall providers: `llm.*` and `proc.*`/`ipc.*`. The table and the decorator are
on the floor (`llmos.core.syscall`); the kernel finds providers through its registry."""
