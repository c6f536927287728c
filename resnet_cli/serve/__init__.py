"""`resnet serve`: one model as a web service and a web page, with dynamic batching.

`batching` (the queue and the thread that runs the model), `service` (the model without
HTTP: decoding, warm-up, answers as data), `v2` (the Open Inference Protocol as data), `app`
(the Starlette routes), `metrics` (Prometheus series and the access log) and `server`
(uvicorn, the socket, signals). Starlette, uvicorn and prometheus-client are the `serve` extra,
imported only here.
"""
