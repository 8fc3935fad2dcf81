"""The MCP server at /mcp (Streamable HTTP): asgi.py is what topdog/asgi.py mounts,
server.py the tools, resources and prompts, handlers.py what each of them does."""
