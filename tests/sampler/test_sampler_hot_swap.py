"""Hot-swap under load: a publish while requests are decoding corrupts none of them."""

from __future__ import annotations

import asyncio

import httpx

from loops_runner.storage import weight_sync
from tests.sampler import helpers

PROMPTS = [[463, 71, 445, 313, 77], [12, 1001, 57, 3000, 8, 9], [900, 901, 902, 903]]
NEW_TOKENS = 48


def test_publish_during_decoding_swaps_between_requests(paired_sampler, paired_run, loops_home,
                                                        adapter_factory) -> None:
    old, new = adapter_factory(11), adapter_factory(12)
    expected = {
        100: [helpers.greedy(old.model, p, NEW_TOKENS) for p in PROMPTS],
        101: [helpers.greedy(new.model, p, NEW_TOKENS) for p in PROMPTS],
    }
    assert all(a != b for a, b in zip(expected[100], expected[101], strict=True))
    old.save(loops_home, paired_run, "hot", step=100)
    assert helpers.publish(loops_home, paired_run, 100, "hot").status_code == 200

    url = paired_sampler.url

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response], dict]:
        async with httpx.AsyncClient(timeout=120) as client:
            def ask(i: int, floor: int) -> asyncio.Future[httpx.Response]:
                # No X-Run-Id: the paired sampler's own run is the default.
                return asyncio.ensure_future(client.post(f"{url}/sample", json={
                    "prompt": PROMPTS[i % 3], "n": 1, "max_tokens": NEW_TOKENS,
                    "temperature": 0.0, "ignore_eos": True},
                    headers={"X-Min-Policy-Version": str(floor)}))

            first_wave = [ask(i, 100) for i in range(24)]
            for _ in range(200):  # publish only once requests are decoding
                engine = (await client.get(f"{url}/health")).json()["engine"]
                if engine["decode_rows"] > 0:
                    break
                await asyncio.sleep(0.01)
            # Exactly what the trainer does: overwrite the folder, LIVE.json, notify.
            new.save(loops_home, paired_run, "hot", step=101)
            weight_sync.write_live(loops_home, paired_run, 101, "hot")
            notice = await client.post(f"{url}/internal/live", json={
                "run_id": paired_run, "version": 101, "name": "hot"})
            assert notice.json() == {"run_id": paired_run, "live": 101}
            in_flight = sum(not f.done() for f in first_wave)
            second_wave = [ask(i, 101) for i in range(12)]
            return (list(await asyncio.gather(*first_wave)),
                    list(await asyncio.gather(*second_wave)), {"in_flight": in_flight})

    first, second, info = asyncio.run(scenario())
    assert info["in_flight"] > 0, "the publish did not overlap any request"
    versions = []
    for i, response in enumerate([*first, *second]):
        assert response.status_code == 200, response.text
        version = int(response.headers["x-trainers-policy-version"])
        versions.append(version)
        # Greedy tokens equal to one version's reference: the request ran
        # entirely on that version (a mid-request swap would mix the two).
        assert response.json()["choices"][0]["token_ids"] == expected[version][i % 3]
    assert 100 in versions[:24]
    assert set(versions[24:]) == {101}
    assert httpx.get(f"{url}/trainers_policy_version").json() == {"policy_version": 101}
