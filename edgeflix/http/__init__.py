"""HTTP/1.1 file serving shared by the origin and the appliance.

Pure cores (request heads, paths, ranges, conditionals, response plans) know nothing of sockets;
`server.py` is the one I/O shell that sends their plans with zero-copy sendfile.
"""
