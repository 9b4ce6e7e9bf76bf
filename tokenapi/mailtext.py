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
        "npm": "npm, pnpm, yarn 1: grep _authToken ~/.npmrc .npmrc",
        "yarn": "yarn:        grep npmAuthToken .yarnrc.yml",
        "bun": "bun:         grep token bunfig.toml",
        "pip": "pip:         pip config get global.index-url   (or echo $PIP_INDEX_URL)",
        "uv": "uv:          echo $UV_INDEX_PKGATE_PASSWORD",
        "poetry": "poetry:      poetry config http-basic.pkgate",
    },
    "ja": {
        "npm": "npm, pnpm, yarn 1: grep _authToken ~/.npmrc .npmrc",
        "yarn": "yarn:        grep npmAuthToken .yarnrc.yml",
        "bun": "bun:         grep token bunfig.toml",
        "pip": "pip:         pip config get global.index-url   (または echo $PIP_INDEX_URL)",
        "uv": "uv:          echo $UV_INDEX_PKGATE_PASSWORD",
        "poetry": "poetry:      poetry config http-basic.pkgate",
    },
}

PLACEHOLDER = {"en": "<YOUR_TOKEN>", "ja": "<YOUR_TOKEN>"}

BREACH_SUBJECT = {
    "en": Template("[pkgate] Security alert: $packages ($advisory)"),
    "ja": Template("[pkgate] セキュリティ警告: $packages ($advisory)"),
}

BREACH_LINE = {
    "en": Template(
        "    $package $version ($ecosystem)\n"
        '        downloaded $when with token "$token_name" ($token_prefix…)$times'
    ),
    "ja": Template(
        "    $package $version ($ecosystem)\n"
        "        ダウンロード日時 $when、トークン「$token_name」($token_prefix…)$times"
    ),
}

BREACH_TIMES = {
    "en": Template(", $count times (last $last)"),
    "ja": Template("、計 $count 回 (最終 $last)"),
}

BREACH = {
    "en": Template("""\
Hello,

a package that your pkgate tokens downloaded from $public_url has since been reported
as malicious or vulnerable, and pkgate now blocks it:

    $advisory: $summary

What your tokens downloaded before this was known:

$lines

What to do
==========

1. Remove the package from every project, lock file and machine (developer machines, CI
   runners, containers) that installed it; reinstall from a clean state.
2. Treat those machines as possibly compromised: look for unknown processes, scheduled jobs
   and changed files, and check your CI logs from the time of the download.
3. Rotate every secret that was reachable from them: cloud and registry credentials, SSH
   keys, API tokens (your pkgate token too: $api/v1/tokens/regenerate).
4. Details of the advisory: search for $advisory in the OSV database.

You get this mail once per advisory. To stop security mails for a token, revoke it:
curl -X DELETE -H "Authorization: Bearer <YOUR_TOKEN>" $api/v1/tokens
"""),
    "ja": Template("""\
こんにちは。

$public_url からあなたの pkgate トークンでダウンロードされたパッケージが、その後
悪意のある、または脆弱なパッケージとして報告され、現在 pkgate でブロックされています。

    $advisory: $summary

判明する前にあなたのトークンがダウンロードしたもの:

$lines

対応のお願い
============

1. このパッケージをインストールしたすべてのプロジェクト、ロックファイル、マシン (開発用
   マシン、CI ランナー、コンテナ) から削除し、クリーンな状態から再インストールしてください。
2. それらのマシンが侵害された可能性があるものとして扱い、不明なプロセスや定期実行ジョブ、
   変更されたファイルを確認し、ダウンロード時刻の CI ログを確認してください。
3. それらのマシンから参照できたすべての秘密情報 (クラウドやレジストリの認証情報、SSH 鍵、
   API トークン、pkgate トークンも: $api/v1/tokens/regenerate) を再発行してください。
4. アドバイザリの詳細は OSV データベースで $advisory を検索してください。

このメールはアドバイザリごとに 1 回だけ送信されます。トークンへのセキュリティメールを
止めるにはトークンを無効化してください:
curl -X DELETE -H "Authorization: Bearer <YOUR_TOKEN>" $api/v1/tokens
"""),
}
