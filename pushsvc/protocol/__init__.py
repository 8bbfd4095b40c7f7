"""The sans-I/O core: event model, cursor codec, wire encoders, client-frame parsing and
the resume merge. Nothing here awaits or imports starlette or redis."""
