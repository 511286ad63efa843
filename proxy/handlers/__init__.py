"""HTTP handlers: parse the request, call a plain function in proxy.service, render."""
