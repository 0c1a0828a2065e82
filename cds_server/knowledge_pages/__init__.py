"""Knowledge pages: read-only HTML pages of every fact in ``cards/``, for reviewers and card links.

``content`` builds the pages (an index; one page per drug, class, agent and desensitization
protocol, facts grouped by card topic; with a site overlay, its entries beside the label facts
they change and one page per institution protocol) from the knowledge model; ``html``
renders them with Jinja (autoescaped, no script, no external resource) and writes them as
static files;
``links`` is the path scheme and the card-link index that ``render`` reads. Nothing here
imports Flask or the web layer: ``cds_server/web/knowledge.py`` serves the pages.
"""
