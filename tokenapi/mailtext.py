"""The words of pkgate's emails, in English and Japanese, as plain text.

Only fixed text lives here; values (URL, token, code, address) are filled in by ``mail.py``.
Addresses and URLs are validated before they reach a template, so no header or shell injection
can come in through them.
"""

from __future__ import annotations

from string import Template

WELCOME_SUBJECT = {
    "en": "Your pkgate token",
    "ja": "pkgate トークンのお知らせ",
}

RESET_SUBJECT = {
    "en": "Your pkgate reset code",
    "ja": "pkgate リセットコードのお知らせ",
}

WELCOME = {
    "en": Template("""\
Hello,

here is your pkgate token for $public_url. One token works for every package manager
this server serves:

    $token

It is shown only in this email and pkgate keeps no copy of it: store it where your package
managers read it (below) and keep it secret.

Set up your package managers
============================

$setup
Manage your token
=================

Status:      curl -H "Authorization: Bearer $token" $api/v1/tokens/status
Rotate:      curl -X POST -H "Authorization: Bearer $token" $api/v1/tokens/regenerate
Revoke:      curl -X DELETE -H "Authorization: Bearer $token" $api/v1/tokens

If you did not ask for this token, revoke it with the last command.
"""),
    "ja": Template("""\
こんにちは。

$public_url 用の pkgate トークンをお送りします。このサーバーが扱うすべての
パッケージマネージャーで同じトークンを使えます。

    $token

トークンはこのメールでのみ表示され、pkgate には保存されません。下記の設定ファイルに
保存し、他人に知られないよう管理してください。

パッケージマネージャーの設定
============================

$setup
トークンの管理
==============

状態の確認:  curl -H "Authorization: Bearer $token" $api/v1/tokens/status
再発行:      curl -X POST -H "Authorization: Bearer $token" $api/v1/tokens/regenerate
無効化:      curl -X DELETE -H "Authorization: Bearer $token" $api/v1/tokens

このトークンに心当たりがない場合は、最後のコマンドで無効化してください。
"""),
}

RESET = {
    "en": Template("""\
Hello,

someone (hopefully you) asked for a pkgate token for this address at $public_url.
This address already has a token. Package managers keep it in plain text, so you can
usually find it where you set it up:

$where

If you cannot find it, this one-time code replaces it with a new token. The code is valid
for one hour and works once:

    $code

    curl --json '$reset_json' $api/v1/tokens/reset

The answer holds your new token; the old one stops working at once. Put the new token into
your configuration in place of $placeholder:

$setup
If you did not ask for this, ignore this email: nothing changes without the code.
"""),
    "ja": Template("""\
こんにちは。

$public_url で、このメールアドレス宛ての pkgate トークンの発行が要求されました。
このアドレスにはすでにトークンが発行されています。パッケージマネージャーはトークンを
平文で保存するため、設定した場所から確認できます。

$where

見つからない場合は、次のワンタイムコードで新しいトークンに置き換えられます。
コードの有効期限は 1 時間で、1 回だけ使えます。

    $code

    curl --json '$reset_json' $api/v1/tokens/reset

レスポンスに新しいトークンが含まれ、古いトークンはただちに無効になります。
設定の $placeholder を新しいトークンに置き換えてください。

$setup
心当たりがない場合は、このメールを無視してください。コードが使われない限り何も変わりません。
"""),
}

WHERE = {
    "en": {
        "npm": "npm, pnpm:   grep _authToken ~/.npmrc .npmrc",
        "yarn": "yarn:        grep npmAuthToken .yarnrc.yml",
        "bun": "bun:         grep token bunfig.toml",
        "pip": "pip:         pip config get global.index-url   (or echo $PIP_INDEX_URL)",
        "uv": "uv:          echo $UV_INDEX_PKGATE_PASSWORD",
        "poetry": "poetry:      poetry config http-basic.pkgate",
    },
    "ja": {
        "npm": "npm, pnpm:   grep _authToken ~/.npmrc .npmrc",
        "yarn": "yarn:        grep npmAuthToken .yarnrc.yml",
        "bun": "bun:         grep token bunfig.toml",
        "pip": "pip:         pip config get global.index-url   (または echo $PIP_INDEX_URL)",
        "uv": "uv:          echo $UV_INDEX_PKGATE_PASSWORD",
        "poetry": "poetry:      poetry config http-basic.pkgate",
    },
}

PLACEHOLDER = {"en": "<YOUR_TOKEN>", "ja": "<YOUR_TOKEN>"}
