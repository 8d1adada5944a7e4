"""`sow eval`: the paper's measurement.

The benchmark spec (`spec`), the resumable runner and its methods (`runner`), reports
(`report`), the face metrics (`face_metrics`) and the inpainting baseline (`inpainting`).
May import everything in the library except the CLI.
"""
