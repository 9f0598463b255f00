"""The HTTP face of the gateway, the only package that knows Sanic: the app, its connections and
server, reading and writing requests, authentication helpers, the routes, the console, OpenAPI."""
