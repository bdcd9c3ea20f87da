"""The reference server-everything, relayed feature by feature."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp.client.context import ClientRequestContext

from tests.support.proxy_client import direct_session, proxy_session

PREFIX = "everything__"


@pytest.fixture
def config(relay_config: Any, everything_server: Path) -> Path:
    return relay_config({"everything": {"command": str(everything_server)}})


async def sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text="sampled by the test client"),
        model="test-model",
    )


async def elicitation(
    context: ClientRequestContext, params: types.ElicitRequestParams
) -> types.ElicitResult:
    return types.ElicitResult(action="decline")


async def roots(context: ClientRequestContext) -> types.ListRootsResult:
    return types.ListRootsResult(
        roots=[types.Root(uri="file:///workspace/project", name="project")]
    )


CALLBACKS: dict[str, Any] = {
    "sampling_callback": sampling,
    "elicitation_callback": elicitation,
    "list_roots_callback": roots,
}


@pytest.mark.anyio
async def test_lists_every_tool_resource_template_and_prompt(
    config: Path, everything_server: Path
) -> None:
    """Everything the server lists directly, the proxy lists too, tools prefixed."""
    async with direct_session(str(everything_server), **CALLBACKS) as direct:
        want_tools = {t.name: t for t in (await direct.list_tools()).tools}
        want_resources = (await direct.list_resources()).resources
        want_templates = (await direct.list_resource_templates()).resource_templates
        want_prompts = {p.name for p in (await direct.list_prompts()).prompts}

    async with proxy_session(config, **CALLBACKS) as proxied:
        tools = {t.name: t for t in (await proxied.list_tools()).tools}
        resources = (await proxied.list_resources()).resources
        templates = (await proxied.list_resource_templates()).resource_templates
        prompts = {p.name for p in (await proxied.list_prompts()).prompts}

    assert set(tools) == {PREFIX + name for name in want_tools}
    for name, tool in want_tools.items():
        relayed = tools[PREFIX + name]
        assert relayed.model_dump(exclude={"name"}) == tool.model_dump(exclude={"name"})

    assert [r.uri for r in resources] == [r.uri for r in want_resources]
    assert [t.uri_template for t in templates] == [
        t.uri_template for t in want_templates
    ]
    assert prompts == {PREFIX + name for name in want_prompts}


@pytest.mark.anyio
async def test_initialize_relays_the_servers_capabilities_and_instructions(
    config: Path,
) -> None:
    """The client sees the capabilities the proxy relays and the server's notes."""
    async with proxy_session(config) as session:
        result = session.initialize_result

    assert result is not None
    assert result.protocol_version == "2025-11-25"
    capabilities = result.capabilities
    assert capabilities.tools is not None and capabilities.tools.list_changed
    assert capabilities.resources is not None and capabilities.resources.subscribe
    assert capabilities.prompts is not None and capabilities.completions is not None
    assert capabilities.logging is not None
    assert result.instructions is not None and "Everything" in result.instructions


@pytest.mark.anyio
async def test_plain_tools_answer_as_they_do_directly(config: Path) -> None:
    """Text, structured content, images, annotations and resource links pass intact."""
    async with proxy_session(config) as session:
        echo = await session.call_tool(PREFIX + "echo", {"message": "hello"})
        total = await session.call_tool(PREFIX + "get-sum", {"a": 2, "b": 3})
        image = await session.call_tool(PREFIX + "get-tiny-image", {})
        weather = await session.call_tool(
            PREFIX + "get-structured-content", {"location": "Chicago"}
        )
        annotated = await session.call_tool(
            PREFIX + "get-annotated-message", {"messageType": "error"}
        )
        links = await session.call_tool(PREFIX + "get-resource-links", {"count": 2})
        reference = await session.call_tool(
            PREFIX + "get-resource-reference", {"resourceType": "Text", "resourceId": 1}
        )
        env = await session.call_tool(PREFIX + "get-env", {})

    assert echo.content[0].text == "Echo: hello"  # type: ignore[union-attr]
    assert "5" in total.content[0].text  # type: ignore[union-attr]
    assert any(c.type == "image" for c in image.content)
    assert weather.structured_content is not None
    assert annotated.content[0].annotations is not None
    assert sum(c.type == "resource_link" for c in links.content) == 2
    assert any(c.type == "resource" for c in reference.content)
    assert env.content and not env.is_error


@pytest.mark.anyio
async def test_gzip_tool_makes_a_resource_that_can_be_read_back(config: Path) -> None:
    """A resource created by a tool call is routed back to the server that made it."""
    payload = base64.b64encode(b"hello through the proxy").decode()
    async with proxy_session(config) as session:
        result = await session.call_tool(
            PREFIX + "gzip-file-as-resource",
            {
                "name": "greeting.txt.gz",
                "data": f"data:text/plain;base64,{payload}",
                "outputType": "resourceLink",
            },
        )
        link = next(c for c in result.content if c.type == "resource_link")
        read = await session.read_resource(link.uri)  # type: ignore[union-attr]

    assert not result.is_error
    assert read.contents


@pytest.mark.anyio
async def test_every_resource_and_template_reads_through_the_proxy(
    config: Path,
) -> None:
    """Static resources, and both dynamic templates, are read by URI."""
    async with proxy_session(config) as session:
        resources = (await session.list_resources()).resources
        await session.list_resource_templates()
        contents = [await session.read_resource(r.uri) for r in resources]
        text = await session.read_resource("demo://resource/dynamic/text/3")
        blob = await session.read_resource("demo://resource/dynamic/blob/4")

    assert all(c.contents for c in contents)
    assert text.contents[0].text  # type: ignore[union-attr]
    assert blob.contents[0].blob  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_prompts_and_completion_are_routed_by_their_prefixed_names(
    config: Path,
) -> None:
    """Each prompt renders; completion finds the prompt behind its new name."""
    async with proxy_session(config) as session:
        simple = await session.get_prompt(PREFIX + "simple-prompt")
        args = await session.get_prompt(
            PREFIX + "args-prompt", {"city": "Lyon", "state": "Rhone"}
        )
        resource = await session.get_prompt(
            PREFIX + "resource-prompt", {"resourceType": "Text", "resourceId": "2"}
        )
        completion = await session.complete(
            types.PromptReference(
                type="ref/prompt", name=PREFIX + "completable-prompt"
            ),
            {"name": "department", "value": "E"},
        )

    assert simple.messages and resource.messages
    assert "Lyon" in str(args.messages[0].content)
    assert "Engineering" in completion.completion.values


@pytest.mark.anyio
async def test_progress_reaches_the_client_under_its_own_token(config: Path) -> None:
    """Progress notifications of a long call arrive with the client's token."""
    seen: list[tuple[float, float | None]] = []

    async def on_progress(
        progress: float, total: float | None, message: str | None
    ) -> None:
        seen.append((progress, total))

    async with proxy_session(config) as session:
        result = await session.call_tool(
            PREFIX + "trigger-long-running-operation",
            {"duration": 0.3, "steps": 3},
            progress_callback=on_progress,
        )

    assert not result.is_error
    assert [p for p, _ in seen] == [1, 2, 3]
    assert all(total == 3 for _, total in seen)


@pytest.mark.anyio
async def test_sampling_elicitation_and_roots_go_to_the_client_and_back(
    config: Path,
) -> None:
    """Server-to-client requests are answered by the client's own callbacks."""
    async with proxy_session(config, **CALLBACKS) as session:
        sampled = await session.call_tool(
            PREFIX + "trigger-sampling-request", {"prompt": "say hi", "maxTokens": 20}
        )
        elicited = await session.call_tool(PREFIX + "trigger-elicitation-request", {})
        rooted = await session.call_tool(PREFIX + "get-roots-list", {})

    assert "sampled by the test client" in str(sampled.content)
    assert "decline" in str(elicited.content).lower()
    assert "file:///workspace/project" in str(rooted.content)


@pytest.mark.anyio
async def test_log_messages_and_level_changes_are_relayed(config: Path) -> None:
    """notifications/message from the server reach the client's logging callback."""
    got = anyio.Event()
    messages: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        messages.append(params)
        got.set()

    async with proxy_session(config, logging_callback=on_log) as session:
        await session.set_logging_level("debug")
        await session.call_tool(PREFIX + "toggle-simulated-logging", {})
        with anyio.fail_after(30):
            await got.wait()

        await session.call_tool(PREFIX + "toggle-simulated-logging", {})

    assert messages[0].level in {
        "debug",
        "info",
        "notice",
        "warning",
        "error",
        "critical",
        "alert",
        "emergency",
    }


@pytest.mark.anyio
async def test_subscriptions_deliver_resource_updates(config: Path) -> None:
    """A subscribed resource's updates reach the client through the proxy."""
    updated = anyio.Event()
    uris: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            uris.append(str(message.params.uri))
            updated.set()

    uri = "demo://resource/static/document/architecture.md"
    async with proxy_session(config, message_handler=on_message) as session:
        await session.list_resources()
        await session.subscribe_resource(uri)
        await session.call_tool(PREFIX + "toggle-subscriber-updates", {})
        with anyio.fail_after(30):
            await updated.wait()

        await session.unsubscribe_resource(uri)
        await session.call_tool(PREFIX + "toggle-subscriber-updates", {})

    assert uri in uris


@pytest.mark.anyio
async def test_a_task_only_tool_answers_as_it_does_directly(
    config: Path, everything_server: Path
) -> None:
    """simulate-research-query needs task augmentation, which the proxy does not
    offer (it advertises no tasks capability): the tool's own refusal comes back
    exactly as a direct connection gets it."""
    arguments = {"topic": "sandboxes"}
    async with direct_session(str(everything_server)) as direct:
        want = await direct.call_tool("simulate-research-query", arguments)

    async with proxy_session(config) as session:
        got = await session.call_tool(PREFIX + "simulate-research-query", arguments)

    assert got.is_error and want.is_error
    assert got.content == want.content
