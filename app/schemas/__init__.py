"""marshmallow schemas, one module per resource; imported only by app.api."""
