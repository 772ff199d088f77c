"""llmos and the Model Context Protocol: llmos as an MCP server (`llmos mcp serve`).

The SDK (`mcp`) is imported by `llmos.mcp.server` only, so `import llmos` never loads it.
"""
