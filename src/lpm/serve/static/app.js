// lpm live page: plain JS, the wire protocol of README.md "Live sessions".
"use strict";
const TAG_SELF = 0x01, TAG_PARTNER = 0x02, TAG_FRAME = 0x10, TAG_SPEECH = 0x11, RATE = 16000, MIC_BLOCK = 1024;
const $ = (id) => document.getElementById(id);
let ws = null, mic = null, frames = 0, player = null;
const speech = [];  // [start media time, Float32Array] of the character's voice, played when its frame shows

function playDue(ts) {
  while (speech.length && speech[0][0] <= ts) {
    const [, pcm] = speech.shift();
    if (!player) player = new AudioContext({ sampleRate: RATE });
    const buf = player.createBuffer(1, pcm.length, RATE);
    buf.copyToChannel(pcm, 0);
    const src = player.createBufferSource();
    src.buffer = buf; src.connect(player.destination); src.start();
  }
}
const ctx = $("view").getContext("2d");

function log(text, cls) {
  const line = document.createElement("div");
  line.textContent = new Date().toLocaleTimeString() + "  " + text;
  if (cls) line.className = cls;
  $("log").prepend(line);
}

async function info() {
  const r = await fetch("/v1/info");
  const j = await r.json();
  $("engine").textContent = "model: " + j.model + " · " + j.sessions + " of " + j.max_sessions + " sessions (" +
    j.capacity + ")" + (j.token_required ? " · token required" : "");
  for (const s of j.styles) { const o = document.createElement("option"); o.textContent = s; $("style").append(o); }
  $("style").value = j.styles[1] || j.styles[0];
}

function fileBase64(file) {
  return new Promise((ok, fail) => {
    const r = new FileReader();
    r.onload = () => ok(r.result.split(",")[1]);
    r.onerror = fail;
    r.readAsDataURL(file);
  });
}

async function connect() {
  const token = $("token").value.trim();
  const proto = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${proto}://${location.host}/v1/session` + (token ? `?token=${encodeURIComponent(token)}` : ""));
  ws.binaryType = "arraybuffer";
  const start = { type: "start", text: $("text").value, sample_rate: RATE };
  const file = $("image").files[0];
  if (file) start.reference = await fileBase64(file);
  else start.character = `${$("style").value}:${$("seed").value}`;
  ws.onopen = () => ws.send(JSON.stringify(start));
  ws.onmessage = async (ev) => {
    if (typeof ev.data === "string") {
      const m = JSON.parse(ev.data);
      if (m.type === "ready") { log(`ready: ${m.engine} engine, ${m.character}, vad ${m.vad}`); setRunning(true); }
      else if (m.type === "stats") {
        $("stats").textContent = `fps ${m.fps}   latency p50 ${m.latency_p50_s} s  p95 ${m.latency_p95_s} s\n` +
          `frames ${m.frames}   dropped ${m.dropped}   stages ${JSON.stringify(m.stage_ms)}`;
      } else if (m.type === "barge_in") log(`barge-in at ${m.t} s`, "barge");
      else if (m.type === "error") log("error: " + m.message, "barge");
      else log(ev.data);
      return;
    }
    const view = new DataView(ev.data);
    const tag = view.getUint8(0), ts = view.getFloat64(1, true);
    if (tag === TAG_SPEECH) {
      const pcm = new Int16Array(ev.data.slice(9)), f = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
      speech.push([ts, f]);
      return;
    }
    if (tag !== TAG_FRAME) return;
    playDue(ts);
    const blob = new Blob([new Uint8Array(ev.data, 9)], { type: "image/jpeg" });
    const bitmap = await createImageBitmap(blob);
    ctx.drawImage(bitmap, 0, 0, $("view").width, $("view").height);
    $("view").dataset.frames = ++frames;  // hooks for tests: frames drawn, last media timestamp
    $("view").dataset.ts = ts;
  };
  ws.onclose = (ev) => { log(`closed (${ev.code})`); setRunning(false); stopMic(); };
}

function setRunning(on) {
  $("connect").disabled = on; $("stop").disabled = !on; $("mic").disabled = !on;
  $("speak").disabled = !on; $("interrupt").disabled = !on;
}

function send(obj) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(obj)); }

function pcm16(tag, floats) {
  const buf = new ArrayBuffer(1 + 2 * floats.length), view = new DataView(buf);
  view.setUint8(0, tag);
  for (let i = 0; i < floats.length; i++) {
    const s = Math.max(-1, Math.min(1, floats[i]));
    view.setInt16(1 + 2 * i, s < 0 ? s * 32768 : s * 32767, true);
  }
  return buf;
}

async function startMic() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  const ac = new AudioContext({ sampleRate: RATE });  // the browser resamples the microphone to 16 kHz
  const src = ac.createMediaStreamSource(stream);
  const proc = ac.createScriptProcessor(MIC_BLOCK, 1, 1);
  proc.onaudioprocess = (e) => {
    if (!ws || ws.readyState !== 1) return;
    ws.send(pcm16(TAG_PARTNER, e.inputBuffer.getChannelData(0)));
    $("mic").dataset.sent = (+$("mic").dataset.sent || 0) + 1;  // microphone blocks sent (a test hook)
  };
  src.connect(proc); proc.connect(ac.destination);
  mic = { stream, ac, proc };
  $("mic").textContent = "Mic off";
}

function stopMic() {
  if (!mic) return;
  mic.proc.disconnect(); mic.stream.getTracks().forEach((t) => t.stop()); mic.ac.close();
  mic = null; $("mic").textContent = "Mic on";
}

$("connect").onclick = () => connect().catch((e) => log("error: " + e));
$("stop").onclick = () => { send({ type: "stop" }); };
$("mic").onclick = () => (mic ? stopMic() : startMic().catch((e) => log("mic: " + e)));
$("speak").onclick = () => send({ type: "say", text: $("say").value });
$("interrupt").onclick = () => { send({ type: "interrupt" }); speech.length = 0; };
$("text").onchange = () => send({ type: "text", text: $("text").value });
info().catch((e) => log("info: " + e));
