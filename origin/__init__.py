"""Origin: probe a source, choose a ladder, encode with ffmpeg, package CMAF with HLS and DASH,
publish atomically into the store, and serve the store to appliances for fill.
"""
