"""Drafts keep the document as written; versions hold it normalized."""

import pytest

from apps.workflows.definition import dump_document, normalize, parse_document
from apps.workflows.services import create_workflow, publish_workflow, update_draft

WRITTEN = """slug: tidy
name: Tidy
nodes:
  - {id: a, type: noop}
  - {id: b, type: noop, config: {output: {when: 2026-11-21}}}
edges:
  - {from: a, to: b}
"""


@pytest.mark.django_db
def test_the_draft_is_stored_as_written_and_the_version_normalized(org):
    document = parse_document(WRITTEN)
    workflow = create_workflow(org, document)

    assert workflow.draft == document
    assert "retry" not in workflow.draft["nodes"][0]
    version = publish_workflow(workflow)
    assert version.definition == normalize(document)
    assert version.definition["nodes"][0]["retry"]["max_retries"] == 0
    assert version.definition["edges"][0]["on"] == "success"
    workflow.refresh_from_db()
    assert workflow.has_unpublished_changes is False


@pytest.mark.django_db
def test_export_of_the_draft_round_trips_what_the_author_wrote(org):
    workflow = create_workflow(org, parse_document(WRITTEN))

    assert parse_document(dump_document(workflow.draft)) == parse_document(WRITTEN)


def test_an_unquoted_yaml_date_stays_a_string():
    document = parse_document(WRITTEN)

    assert document["nodes"][1]["config"]["output"]["when"] == "2026-11-21"


@pytest.mark.django_db
def test_a_changed_draft_shows_unpublished_changes_until_published(org):
    workflow = create_workflow(org, parse_document(WRITTEN))
    publish_workflow(workflow)
    changed = parse_document(WRITTEN.replace("name: Tidy", "name: Tidier"))

    update_draft(workflow, changed)
    workflow.refresh_from_db()
    assert workflow.has_unpublished_changes is True
    assert publish_workflow(workflow).number == 2
    workflow.refresh_from_db()
    assert workflow.has_unpublished_changes is False
