"""The offline demo news world: generated stories (:mod:`demo.stories`) and the feeds that serve
them on 127.0.0.1 (:mod:`demo.feeds`).

Only the demo, tests and benchmarks import this package at module level; production code imports
it lazily, in the few functions that start or list the demo feeds, so a deployment scraping real
feeds never loads it.
"""
