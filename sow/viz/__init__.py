"""Pictures: what a run or a stage shows of itself, drawn with PIL (``attention``: DAM's attention picture).

May import the root contract, `sow.attention`'s data types and `sow.io`'s drawing helpers.
"""
