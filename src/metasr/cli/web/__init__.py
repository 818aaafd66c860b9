"""``metasr serve``: a local web app over ``metasr upscale`` (photos and netCDF fields).

* :mod:`~metasr.cli.web.jobs`: the requests as ``metasr upscale`` runs, previews, figures, the
  temporary workspace; needs no Gradio.
* :mod:`~metasr.cli.web.app`: the Gradio page and the JSON endpoints
  (``pip install 'metasr[web]'``).

Nothing here is imported by ``import metasr``.
"""
