// ledger ui: the only script of the pages (served from the binary; the pages have no inline
// script). Two jobs: live updates while a `ledger run` writes, and the progress of `verify`.
"use strict";

(function () {
  const HEAD_EVERY_MS = 2000;
  const VERIFY_EVERY_MS = 400;

  function main() {
    return document.getElementById("main");
  }

  // Replaces the page's <main> with a fresh copy from the server (same URL), keeping the
  // scroll position. The new markup is parsed inert (DOMParser runs no script) and comes from
  // this server, which escapes every text it shows.
  async function refreshMain() {
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById("main");
    const old = main();
    if (!fresh || !old) return;
    const y = window.scrollY;
    old.replaceWith(document.adoptNode(fresh));
    window.scrollTo(0, y);
    startVerifyPolling();
    startReplayPolling();
  }

  function editing() {
    const a = document.activeElement;
    return a && main() && main().contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName);
  }

  async function pollHead() {
    try {
      const response = await fetch("/api/head", { credentials: "same-origin" });
      if (response.ok) {
        const head = await response.json();
        const live = document.getElementById("live");
        if (live) live.textContent = head.events.toLocaleString("en-US") + " events";
        const m = main();
        const shown = m ? Number(m.dataset.events) : head.events;
        if (head.events !== shown && !editing()) {
          await refreshMain();
          if (live) {
            live.classList.add("updated");
            setTimeout(() => live.classList.remove("updated"), 1500);
          }
        }
      }
    } catch (e) {
      // The server went away (Ctrl-C): keep the page as it is.
    }
    setTimeout(pollHead, HEAD_EVERY_MS);
  }

  let verifyTimer = null;
  function startVerifyPolling() {
    const box = document.getElementById("verify-progress");
    if (!box || box.dataset.state !== "running" || verifyTimer) return;
    const bar = box.querySelector("progress");
    const text = box.querySelector(".progress-text");
    const tick = async () => {
      verifyTimer = null;
      try {
        const response = await fetch("/api/verify", { credentials: "same-origin" });
        const status = await response.json();
        if (status.state === "running") {
          if (bar && status.total > 0) {
            bar.max = status.total;
            bar.value = status.done;
          }
          if (text) {
            text.textContent = status.done + " of " + status.total + " blobs rehashed, " +
              status.seconds.toFixed(1) + " s";
          }
          verifyTimer = setTimeout(tick, VERIFY_EVERY_MS);
        } else {
          await refreshMain();
        }
      } catch (e) {
        verifyTimer = setTimeout(tick, VERIFY_EVERY_MS * 5);
      }
    };
    verifyTimer = setTimeout(tick, VERIFY_EVERY_MS);
  }

  // The audit page: while a replay runs, look again every second.
  let replayTimer = null;
  function startReplayPolling() {
    if (replayTimer || !document.querySelector(".replay[data-running]")) return;
    replayTimer = setTimeout(async () => {
      replayTimer = null;
      await refreshMain();
    }, 1000);
  }

  // The runs page: the compare button counts the runs ticked.
  function compareButton() {
    const form = document.getElementById("compare-form");
    if (!form) return;
    const button = form.querySelector("button[type=submit]");
    const update = () => {
      const n = document.querySelectorAll("input.pick:checked").length;
      button.disabled = n < 2;
      button.textContent = n < 2 ? "Compare (tick two or more runs)" : "Compare " + n + " runs";
    };
    document.addEventListener("change", (e) => {
      if (e.target.matches && e.target.matches("input.pick")) update();
    });
    update();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.documentElement.classList.add("js");
    startVerifyPolling();
    startReplayPolling();
    compareButton();
    setTimeout(pollHead, HEAD_EVERY_MS);
  });
})();
