"""The console's studio pages in a real browser: a client's JSON blob created, edited twice (each
change drawn as a diff), a conflicting edit from a stale version (said, with the current version
shown), old versions read, a deletion that leaves the versions readable; providers registered
(a bad one refused naming the field) and removed; a chapter blob that the bundled book-writer
provider expands into a derived blob, seen in the lineage tree and in what the provider
triggered; another client opening the chapter's address gets "Not found"; an administrator
sees every client's blobs."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from conftest import Console, shot

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CHAPTER = (
    "Anna walked down to the harbour before dawn.\n"
    "The lighthouse was dark, and Tomas had not come back.\n"
    "She waited by the boats and listened to the sea.\n"
)


async def _signed_in(console: Console, pages: list[Any], client: str) -> Any:
    username, password = await console.client_user(client)
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, username, password)
    # The first page drawn before going elsewhere: the shell does not stop a page still drawing,
    # which would otherwise draw over the next one.
    await page.get_by_role("heading", name="Dashboard").wait_for()
    return page


async def _create(page: Any, console: Console, content_type: str, content: str, metadata: dict[str, Any]) -> str:
    """Create a blob through the studio page's form; answers its id (from the page's address)."""
    await page.goto(console.url + "/#/studio")
    await page.get_by_role("heading", name="New blob").wait_for()
    await page.get_by_label("Content type").fill(content_type)
    await page.get_by_label("Content", exact=True).fill(content)
    await page.get_by_label("Metadata (JSON object)").fill(json.dumps(metadata))
    await page.get_by_role("button", name="Create blob").click()
    await page.wait_for_url(re.compile(r"#/studio/blobs/[^?]+$"))
    await page.get_by_role("heading", name="Edit").wait_for()
    return str(page.url.rsplit("/", 1)[1])


async def _save(page: Any, content: Any) -> None:
    await page.get_by_label("Content", exact=True).fill(json.dumps(content, indent=2))
    await page.get_by_role("button", name="Save new version").click()


def _lines(page: Any, change: str, kind: str) -> Any:
    """The added (``add``) or removed (``del``) lines of the diff of ``change`` ("Version 1 → 2")."""
    return page.locator("details.studio-delta").filter(has_text=change).locator(f".diff .{kind}")


async def test_a_client_edits_a_json_blob_sees_each_change_meets_a_conflict_and_reads_old_versions(
    console: Console, pages: list[Any]
) -> None:
    page = await _signed_in(console, pages, "inkwell")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Studio").click()
    await page.get_by_role("heading", name="Studio").wait_for()
    await page.get_by_text("No blobs yet").wait_for()

    # An invalid JSON content is refused on the page, naming the field.
    await page.get_by_label("Content", exact=True).fill("{not json")
    await page.get_by_role("button", name="Create blob").click()
    assert "Content: not valid JSON" in await page.get_by_role("alert").inner_text()

    blob_id = await _create(
        page, console, "application/json", '{"title": "Harbour", "chapters": 1}', {"title": "Harbour notes"}
    )
    await page.get_by_role("heading", name="Harbour notes").wait_for()
    await page.get_by_text("One version so far").wait_for()

    await _save(page, {"title": "Harbour", "chapters": 2, "status": "draft"})
    await page.get_by_text("Version 2 of 2").wait_for()
    await _save(page, {"title": "The harbour", "chapters": 2})
    await page.get_by_text("Version 3 of 3").wait_for()

    # Each change is drawn: the values a path had (−) and has (+).
    first = _lines(page, "Version 1 → 2", "add")
    await first.first.wait_for()
    assert set(await first.all_inner_texts()) == {"+ /chapters: 2", '+ /status: "draft"'}
    assert await _lines(page, "Version 1 → 2", "del").all_inner_texts() == ["− /chapters: 1"]
    assert set(await _lines(page, "Version 2 → 3", "del").all_inner_texts()) == {
        '− /status: "draft"',
        '− /title: "Harbour"',
    }
    assert await _lines(page, "Version 2 → 3", "add").all_inner_texts() == ['+ /title: "The harbour"']
    await shot(page, "studio-blob")
    # On a phone: one column, nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await shot(page, "studio-blob-phone")
    await page.set_viewport_size({"width": 1280, "height": 860})

    # Someone else saves version 4 in another tab; this tab still edits version 3.
    other = await page.context.new_page()
    pages.append(other)
    await other.goto(page.url)
    await other.get_by_text("Version 3 of 3").wait_for()
    await _save(other, {"title": "The harbour", "chapters": 4})
    await other.get_by_text("Version 4 of 4").wait_for()

    await _save(page, {"title": "The harbour at dawn", "chapters": 2})
    conflict = page.locator(".studio-conflict")
    await conflict.get_by_role("heading", name="Conflict: the blob is at version 4 now").wait_for()
    assert "version 4" in await conflict.inner_text()
    assert '"chapters": 4' in await conflict.locator("pre").inner_text()  # the current version, shown
    await shot(page, "studio-conflict")
    # The draft is kept; saved on top of the current version, it becomes version 5.
    await page.get_by_role("button", name="Save my draft on top of version 4").click()
    await page.get_by_role("button", name="Save new version").click()
    await page.get_by_text("Version 5 of 5").wait_for()
    assert '"title": "The harbour at dawn"' in await page.locator(".studio-content").first.inner_text()

    # The versions, and an old one read.
    versions = page.get_by_role("region", name="Versions")
    assert await versions.locator("tbody tr").count() == 5
    await versions.get_by_role("link", name="Version 1", exact=True).click()
    await page.get_by_text("Version 1 of 5").wait_for()
    assert json.loads(await page.locator(".studio-content").first.inner_text()) == {"chapters": 1, "title": "Harbour"}
    await page.get_by_role("heading", name="Edit from version 1").wait_for()
    await shot(page, "studio-blob-old-version")

    # Deleted: a tombstone, the versions still readable.
    await page.goto(f"{console.url}/#/studio/blobs/{blob_id}")
    await page.get_by_role("button", name="Delete blob…").click()
    await page.get_by_role("button", name="Delete", exact=True).click()
    await page.get_by_text("This blob is deleted").wait_for()
    await page.get_by_text("Version 5 of 5").wait_for()
    assert await page.get_by_role("heading", name="Edit").count() == 0
    await page.get_by_role("region", name="Versions").get_by_role("link", name="Version 2", exact=True).click()
    await page.get_by_text("Version 2 of 5").wait_for()

    await page.goto(console.url + "/#/studio")
    await page.get_by_role("heading", name="Blobs").wait_for()
    assert await page.get_by_role("link", name="Harbour notes").count() == 0
    await page.get_by_label("Include deleted").check()
    await page.get_by_role("button", name="Apply filters").click()
    await page.get_by_role("link", name="Harbour notes").wait_for()
    await shot(page, "studio-blobs")

    # A text blob's change is drawn as line hunks: the removed line read from the version before.
    await _create(page, console, "text/markdown", CHAPTER, {"title": "Draft"})
    edited = CHAPTER.replace("was dark", "was lit") + "Dawn came.\n"
    await page.get_by_label("Content", exact=True).fill(edited)
    await page.get_by_role("button", name="Save new version").click()
    await page.get_by_text("Version 2 of 2").wait_for()
    removed = _lines(page, "Version 1 → 2", "del")
    await removed.first.wait_for()
    assert await removed.all_inner_texts() == ["− The lighthouse was dark, and Tomas had not come back."]
    assert await _lines(page, "Version 1 → 2", "add").all_inner_texts() == [
        "+ The lighthouse was lit, and Tomas had not come back.",
        "+ Dawn came.",
    ]


async def test_a_chapter_is_expanded_by_the_bundled_provider_seen_in_its_lineage_and_what_it_triggered(
    console: Console, pages: list[Any]
) -> None:
    page = await _signed_in(console, pages, "inkwell")
    await page.goto(console.url + "/#/studio/providers")
    await page.get_by_role("heading", name="Book Writing Assistant book-writer").wait_for()
    await page.get_by_text("the platform's: reacts to every client's blobs").wait_for()

    # A provider of the client's own: a bad one is refused naming the field, a good one listed.
    form = page.get_by_label("Provider (YAML or JSON)")
    await form.fill("provider: {id: notes, name: Notes, type: processor}\nworkflows: []\n")
    await page.get_by_role("button", name="Register provider").click()
    assert "workflows" in await page.get_by_role("alert").inner_text()
    await form.fill(
        "provider: {id: notes, name: Note keeper, type: processor}\n"
        "workflows:\n"
        "  - workflow_id: book_chapter_expansion\n"
        "    triggers:\n"
        "      - event: onUpdate\n"
        "        conditions: [{field: metadata.type, operator: eq, value: note}]\n"
    )
    await page.get_by_role("button", name="Register provider").click()
    notes = page.get_by_role("article", name="Note keeper notes")
    await notes.wait_for()
    assert "onUpdate" in await notes.inner_text() and "yours: reacts to your blobs" in await notes.inner_text()

    metadata = {"type": "chapter", "book_id": "book:harbour", "chapter_number": 1, "title": "Chapter one"}
    chapter_id = await _create(page, console, "text/markdown", CHAPTER, metadata)
    await page.get_by_role("heading", name="Chapter one").wait_for()

    # The bundled book-writer expands it: the page shows the run and, without a reload, the
    # derived blob in the lineage tree with its edge.
    lineage = page.get_by_role("region", name="Lineage")
    await lineage.get_by_text("derived by provider book-writer").wait_for(timeout=90_000)
    edge = await lineage.locator(".studio-edge").first.inner_text()
    assert "workflow book_chapter_expansion" in edge and "execution" in edge
    runs = page.get_by_role("region", name="Provider runs for this blob")
    await runs.get_by_text("completed").wait_for(timeout=60_000)
    assert "book-writer" in await runs.inner_text()
    derived = lineage.locator(".studio-tree ul a").first
    derived_name = await derived.inner_text()
    await shot(page, "studio-lineage")

    await derived.click()
    await page.get_by_role("heading", name=derived_name).wait_for()
    await page.get_by_role("region", name="Lineage").get_by_role("link", name="Chapter one").wait_for()
    await page.get_by_role("region", name="Lineage").get_by_text("(this blob)").wait_for()
    assert "expanded_chapter" in await page.get_by_role("region", name="About this blob").inner_text()

    # What the provider triggered: the chapter and the blob its run derived.
    await page.goto(console.url + "/#/studio/providers")
    writer = page.get_by_role("article", name="Book Writing Assistant book-writer")
    triggered = writer.locator("tbody tr").filter(has=page.locator(f'a[href="#/studio/blobs/{chapter_id}"]'))
    await triggered.wait_for()
    assert "book_chapter_expansion" in await triggered.inner_text()
    await triggered.get_by_text("derived").wait_for()
    await shot(page, "studio-providers")

    await notes.get_by_role("button", name="Remove notes…").click()
    await notes.get_by_role("button", name="Remove", exact=True).click()
    await page.get_by_role("article", name="Note keeper notes").wait_for(state="detached")

    # Another client: the chapter's address is "Not found", and it sees none of inkwell's runs.
    stranger = await _signed_in(console, pages, "harbourside")
    await stranger.goto(f"{console.url}/#/studio/blobs/{chapter_id}")
    await stranger.get_by_role("heading", name="Not found").wait_for()
    await shot(stranger, "studio-not-found")
    await stranger.goto(console.url + "/#/studio/providers")
    strangers_writer = stranger.get_by_role("article", name="Book Writing Assistant book-writer")
    await strangers_writer.get_by_text("It has started nothing for your blobs yet.").wait_for()


async def test_an_administrator_sees_every_clients_blobs(console: Console, pages: list[Any]) -> None:
    page = await console.page()
    pages.append(page)
    await console.sign_in(page, "admin", console.up.admin_password, admin=True)
    await page.get_by_role("heading", name="Overview").wait_for()
    await page.goto(console.url + "/#/studio")
    await page.get_by_role("heading", name="Studio").wait_for()
    await page.get_by_label("Owner (client)").fill("inkwell")
    await page.get_by_role("button", name="Apply filters").click()
    chapter = page.get_by_role("link", name="Chapter one")
    await chapter.wait_for()
    row = page.locator("tbody tr").filter(has=chapter)
    assert "inkwell" in await row.inner_text()
    await chapter.click()
    await page.get_by_role("heading", name="Chapter one").wait_for()
    assert "recorded in the audit log" in await page.get_by_role("region", name="About this blob").inner_text()
    await page.goto(console.url + "/#/studio/providers")
    await page.get_by_role("heading", name="Book Writing Assistant book-writer").wait_for()
    await shot(page, "studio-admin-providers")
