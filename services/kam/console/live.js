// Live updates: Server-Sent Events over the session cookie (EventSource sends cookies, not
// headers). When the connection drops, the browser reconnects by itself and sends the last id
// it saw as Last-Event-ID; the platform answers what was missed after it. An update is handed
// on once: ids already seen (a reconnect racing an update) are dropped here.

/** The events of KAM's notification stream (its SSE event names): a request's transitions. */
export const REQUEST_EVENTS = [
  "nexus.kam.request.created",
  "nexus.kam.request.updated",
  "nexus.kam.request.template_assigned",
  "nexus.kam.request.executing",
  "nexus.kam.request.completed",
  "nexus.kam.request.failed",
  "nexus.kam.deliverable.recorded",
];

/** A request's statuses, in the order a request goes through them. */
export const REQUEST_STATUSES = ["pending", "template_assigned", "executing", "completed", "failed"];

/**
 * Follow `url`; `onUpdate(type, data, id)` for each event (data parsed as JSON when it is).
 * `types` lists the event names to listen for besides "message". Answers an object with
 * `close()` and `state` ("connecting", "open", "reconnecting", "closed") and calls
 * `onState(state)` when it changes.
 */
export function follow(url, { types = [], onUpdate, onState = () => {} } = {}) {
  const seen = new Set();
  const order = [];
  const source = new EventSource(url, { withCredentials: true });
  const handle = { state: "connecting", close: () => close() };

  function setState(state) {
    if (handle.state === state) return;
    handle.state = state;
    onState(state);
  }

  function deliver(event) {
    const id = event.lastEventId || "";
    if (id) {
      if (seen.has(id)) return;
      seen.add(id);
      order.push(id);
      if (order.length > 5000) seen.delete(order.shift());
    }
    let data = event.data;
    try {
      data = JSON.parse(event.data);
    } catch {
      // not JSON: hand on the text
    }
    onUpdate(event.type, data, id);
  }

  source.addEventListener("open", () => setState("open"));
  source.addEventListener("error", () => {
    setState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  });
  source.addEventListener("message", deliver);
  for (const type of types) source.addEventListener(type, deliver);

  function close() {
    source.close();
    setState("closed");
  }
  return handle;
}
