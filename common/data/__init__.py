"""Data: public table schemas, label vocabularies, and (in time) the loaders and partitioners.

Everything here that turns records into model inputs must not depend on the records
themselves (see the README's privacy model): bounds, categories and class names are public
settings of the site's policy, never statistics of its data.
"""
