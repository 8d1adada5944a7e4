"""Pictures: everything sow draws for a person to look at.

What every picture shares (`pictures`: the scalable font, labels on dark tags, legends, colour
scales, the upscale of small canvases), the plan picture (`plan`: the seeded canvas with every
box_v and box_r drawn and labelled), the stage chart of ``sow bench`` (`bench_chart`) and DAM's
attention picture (`attention`). They draw with PIL only and return images; saving them is the
caller's. May import `sow.errors`, `sow.schemas`, `sow.stages` and `sow.attention`'s data types
(what the pictures show); never the engine's runs, the planners, eval, bench, batch or CLI.
"""
