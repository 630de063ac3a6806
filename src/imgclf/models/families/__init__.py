"""Families of networks besides imgclf's builtins and timm's, one module each, found by file name.

A family module declares `FAMILY`, a `imgclf.models.factory.ModelFamily`: the model names it offers
(each with its one-line description for `imgclf models`), how to build one from `model_args`, and
its anatomy (classifier, features, blocks). The modules are imported the first time a model name
is looked up. Code outside imgclf may also call `register_family` itself.
"""
