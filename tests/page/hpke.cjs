// The page's HPKE (orchestrator/host-service/src/page/hpke.js) in Debian's Chromium: RFC 9180's
// P-256 vector, and envelopes exchanged with the Rust side (protocol::sealed) both ways.
// usage: node hpke.cjs BASE_URL INPUT_JSON  (env: PLAYWRIGHT_CORE)
// Prints one JSON line with what it computed; exits 1 on an exception.
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const fs = require("fs");

(async () => {
  const input = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu"],
  });
  try {
    const page = await browser.newPage();
    await page.goto(process.argv[2]);
    const out = await page.evaluate(async (input) => {
      const h = window.hpke, v = input.vector, got = {};
      const recipient = await h.deriveKeyPair(h.unhex(v.ikmR));
      got.pkRm = h.hex(h.unb64(await h.publicKeyBase64(recipient)));
      got.skRm = h.hex(recipient.sk);
      const eph = await h.deriveKeyPair(h.unhex(v.ikmE));
      got.pkEm = h.hex(h.unb64(await h.publicKeyBase64(eph)));
      const e0 = v.encryptions[0];
      const sealed = await h.sealWith(v.aead_id, h.unhex(v.pkRm), h.unhex(v.info), h.unhex(e0.pt), h.unhex(e0.aad), eph);
      got.enc = h.hex(sealed.enc);
      got.shared_secret = h.hex(sealed.shared);
      got.key_schedule_context = h.hex(sealed.ks.context);
      got.secret = h.hex(sealed.ks.secret);
      got.key = h.hex(sealed.ks.key);
      got.base_nonce = h.hex(sealed.ks.baseNonce);
      got.ct = h.hex(sealed.ct);
      got.opened = h.hex(await h.openWith(v.aead_id, recipient, h.unhex(v.enc), h.unhex(v.info), h.unhex(e0.ct), h.unhex(e0.aad)));

      // Rust sealed to a key derived from input.ikm: the page opens it, and only for its context.
      const mine = await h.deriveKeyPair(h.unhex(input.ikm));
      const text = new TextDecoder().decode(await h.open(mine, input.ctx, input.rust_sealed));
      let wrongVersion = "opened";
      try { await h.open(mine, { ...input.ctx, version: input.ctx.version + 1 }, input.rust_sealed); } catch (e) { wrongVersion = e.message; }
      // The page seals to a Rust-made key, for Rust to open.
      const pageSealed = await h.seal(input.rust_public, input.ctx, new TextEncoder().encode(input.page_plaintext));
      // The recovery file carries the key to another browser.
      const restored = await h.importRecovery(await h.exportRecovery(mine, "someone@example.test"));
      const again = new TextDecoder().decode(await h.open(restored, input.ctx, input.rust_sealed));
      return { got, rustOpened: text, wrongVersion, pageSealed, recoveredOpens: again === text,
               info: h.hex(h.info(input.ctx.user, input.ctx.provider, input.ctx.version)) };
    }, input);
    console.log(JSON.stringify(out));
    await browser.close();
  } catch (e) {
    console.log(JSON.stringify({ failure: String(e && e.message || e) }));
    await browser.close();
    process.exit(1);
  }
})();
