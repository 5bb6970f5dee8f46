"""Between the API and the batcher/runtime: loading models, the one home of device defaults
(layout), the engine that serves every model through a batcher, and the face pipeline.
Never imports `api`."""
