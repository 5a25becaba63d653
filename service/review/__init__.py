"""Human review at the pipeline's three gates: anchor, target and evaluation review tasks.

Layout: ``models`` (tables), ``answers`` (validation and majority per task kind), ``materials``
(request artifacts to task inputs and reviewed results back), ``services`` (gates, claims, answers,
quality controls), ``controllers`` (``/v1/review`` API), ``web`` (the ``/review`` UI) and ``startup``.
"""
