"""Reading real-world media: tolerant audio and video decoding, pictures, and framing a reference like the world.

Lower than ``lpm.data`` and ``lpm.runtime`` (both read files through it); imports only ``lpm.errors``.
"""
