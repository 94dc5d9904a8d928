"""The API's JSON parser: DRF's, with the document limits of config.limits (depth, parsed size,
what cannot be stored) answered as 400 in the error shape instead of a RecursionError."""

from __future__ import annotations

import codecs

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from config.limits import document_problem, loads_json, problem_text


class LimitedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
            data = loads_json(text, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        problem = document_problem(data)
        if problem:
            raise ParseError(f"The body is not accepted: {problem_text(problem)}.")
        return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")
