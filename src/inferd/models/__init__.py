"""Model supply: the pinned model spec, the content-addressed store and its downloader.

Used by the daemon at boot and by `inferd pull` / `inferd import` with no daemon running.
"""
