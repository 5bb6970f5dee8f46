"""Pure face knowledge for Photofield's /faces: decode, RetinaFace pre/post-processing,
ArcFace-template alignment and recognizer input. Nothing here knows HTTP, queues or sessions."""
