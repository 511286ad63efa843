"""HTTP handlers: parse the request, call a plain function in proxy.core.services, render."""
