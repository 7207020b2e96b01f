"""Talking to Optimove: the client and what it needs.

- ``client``: the one send path (auth, signing, rate limits, retries) and ``OptimoveAuthError``;
- ``outcome``: the endpoints, the single HTTP classifier and the ``Delivery`` result;
- ``transport``: HTTP as httpx does it (environment proxies and CA bundles), kept lean;
- ``ratelimit``: the sliding-window permit algorithm, with slots in memory or in a file
  shared by every process using one API key;
- ``limits``: Optimove's documented caps and quotas;
- ``formats``: date/time strings in Optimove's shapes.

Nothing is imported here, so that a module needing only ``limits`` does not load httpx.
"""
