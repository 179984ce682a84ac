#!/usr/bin/env node
// The official Aspose.Words Cloud Node.js SDK (npm `asposewordscloud`) pointed at the proxy:
// upload, list, download and delete one file. Exits non-zero on any error or mismatch.
//
//   node roundtrip.js <proxy base URL> [sandbox URL to revoke the upstream token halfway]
//
// The client id and secret are made up: the proxy's local token endpoint answers the SDK's
// token request (POST /v4.0/words/connect/token) with a placeholder, and replaces it with the
// real token on every API call. ASPOSE_CLIENT_ID / ASPOSE_CLIENT_SECRET override them.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const os = require("os");
const path = require("path");
const words = require("asposewordscloud");

function fail(message) {
  console.error(`roundtrip: FAIL: ${message}`);
  process.exit(1);
}

function describe(error) {
  if (error && error.response) {
    const body = error.body ? JSON.stringify(error.body) : "";
    return `HTTP ${error.response.statusCode} ${body}`;
  }
  return error && error.message ? error.message : String(error);
}

async function main() {
  const [baseUrl, revokeAt] = process.argv.slice(2);
  if (!baseUrl) fail("usage: node roundtrip.js <proxy base URL> [sandbox URL]");
  const clientId = process.env.ASPOSE_CLIENT_ID || "node-sdk-anyone";
  const clientSecret = process.env.ASPOSE_CLIENT_SECRET || "not-a-real-secret";
  // WordsApi(clientId, clientSecret, baseUrl, debugMode): baseUrl without /v4.0
  const api = new words.WordsApi(clientId, clientSecret, baseUrl);

  const folder = `sdk-node-${process.pid}`;
  const remote = `${folder}/report.docx`;
  const content = Buffer.concat([
    Buffer.from("PK\x03\x04 not really a docx "),
    crypto.randomBytes(300 * 1024),
  ]);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "aspose-proxy-node-"));
  const local = path.join(tmp, "report.docx");
  fs.writeFileSync(local, content);

  try {
    // fileContent is a Readable; the SDK sends it as the raw body (chunked, no length)
    const uploaded = await api.uploadFile(
      new words.UploadFileRequest({ fileContent: fs.createReadStream(local), path: remote }),
    );
    const names = uploaded.body.uploaded || [];
    if (names.length !== 1 || names[0] !== "report.docx") {
      fail(`upload answered ${JSON.stringify(uploaded.body)}`);
    }
    if ((uploaded.body.errors || []).length) fail(`upload errors ${JSON.stringify(uploaded.body)}`);
    console.log(`uploaded ${remote} (${content.length} bytes)`);

    if (revokeAt) {
      // every upstream token issued so far is refused from now on; the proxy must cope
      const answer = await fetch(`${revokeAt}/_sandbox/revoke`, { method: "POST" });
      if (!answer.ok) fail(`revoke answered ${answer.status}`);
      console.log("revoked the upstream token");
    }

    const listing = await api.getFilesList(new words.GetFilesListRequest({ path: folder }));
    const entries = (listing.body.value || []).map((f) => `${f.name}:${f.size}:${f.isFolder}`);
    if (entries.join(",") !== `report.docx:${content.length}:false`) {
      fail(`list answered ${JSON.stringify(entries)}`);
    }
    console.log(`listed ${folder}: ${entries.join(", ")}`);

    const downloaded = await api.downloadFile(new words.DownloadFileRequest({ path: remote }));
    if (!Buffer.isBuffer(downloaded.body) || !downloaded.body.equals(content)) {
      const got = Buffer.isBuffer(downloaded.body) ? downloaded.body.length : typeof downloaded.body;
      fail(`download mismatch: got ${got}, expected ${content.length} bytes`);
    }
    console.log(`downloaded ${remote}: identical`);

    await api.deleteFile(new words.DeleteFileRequest({ path: remote }));
    const after = await api.getFilesList(new words.GetFilesListRequest({ path: folder }));
    if ((after.body.value || []).length !== 0) {
      fail(`still listed after delete: ${JSON.stringify(after.body.value)}`);
    }
    console.log(`deleted ${remote}`);
    console.log("roundtrip: OK");
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((error) => fail(describe(error)));
