"""llmos and the Model Context Protocol, both ways: llmos as an MCP server
(`llmos mcp serve`, `server.py`) and as an MCP client whose servers' tools are syscalls
`mcp.NAME.TOOL` (`client.py`; `store.py` keeps the server list, `provider.py` registers
the tools at kernel boot).

The SDK (`mcp`) is imported by `server.py` and `client.py` only, so `import llmos` never
loads it, nor does a kernel with no MCP server configured.
"""
