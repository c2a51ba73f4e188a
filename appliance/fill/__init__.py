"""The fill client: bring the titles a fill plan wants onto this appliance, inside the fill
window and under the bandwidth cap, from a peer or the origin, verified before they serve.

Pure cores: plan (the model), window, bucket (token bucket), retry (backoff and error
classes), reconcile (what to fetch and delete). I/O shells: downloader (httpx) and run
(staging → storage hand-off).
"""
