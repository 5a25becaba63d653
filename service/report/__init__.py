"""The request report: one readable, printable page (and the same data as JSON) per forget request.

``data`` gathers it from the database (numbers, hashes and times only: never corpus or probe text),
``plot`` draws the answer-probability chart as SVG on the server, ``render`` fills the template, and
``controllers`` serves it under ``/v1/forget-requests/{id}/report`` and in the review UI.
"""
