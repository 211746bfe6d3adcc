"""Unit tests of stepscope's own HTTP/1.1 server and the proxy on it, over real sockets on 127.0.0.1."""
