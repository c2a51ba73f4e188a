"""The fill client: bring the titles a fill plan wants onto this appliance, inside the fill
window and under the bandwidth cap, from a peer or the origin, verified before they serve.

Pure cores: plan (the model), window, retry (backoff and error classes), peerwait (wait
for a site peer still filling a title, or take the origin), reconcile (what to fetch and
delete), http1 (HTTP/1.1 responses), redact (sources shown without a peer's token); the
cap's token bucket is edgeflix/bucket.py. I/O shells: transport (our keep-alive HTTP
client), stream, staged and downloader (files into staging, verified), pacer (cap and
window), runner (staging → storage hand-off, deferred titles).
"""
